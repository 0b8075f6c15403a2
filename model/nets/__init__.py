"""The networks: encoder trunks (ResNet, the small convnet), the attention decoder, the joined CaptionModel, search."""
