"""Box, assignment, sampling, NMS and mask operations in `keras.ops` (NMS uses `tf.image`)."""
