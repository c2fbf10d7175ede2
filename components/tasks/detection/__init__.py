"""Object detection: annotated images in, an SSD-style detector out (components/tasks/detection/*)."""
