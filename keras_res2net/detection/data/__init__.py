"""Detection data: the synthetic shapes generator, the COCO JSON loader and the tf.data pipeline."""
