"""How the model learns: the fit loop, TrainArgs and args.json, builders, the step, validation, SCST and CIDEr-D."""
