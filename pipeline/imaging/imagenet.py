"""ImageNet channel statistics (RGB, pixels scaled to 0..1): the input normalisation
the torchvision ResNet weights were trained with."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
