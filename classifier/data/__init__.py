"""Data: the label schema, loading and validation of labelled files, splits, and the builder of the
default routing data set from ``../shared/datasets``. Nothing here needs torch."""
