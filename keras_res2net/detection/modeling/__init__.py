"""Detection model pieces: backbone wrapper, FPN decoder, anchors, heads, RoIAlign, detector."""
