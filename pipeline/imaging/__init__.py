"""One image file -> one square RGB JPEG: decode (DCT-scaled), orient, resize (Pillow's bicubic in C), encode."""
