"""Everything before the model sees a tensor: knows data, not networks. Imports nothing from model/ or tools/."""
