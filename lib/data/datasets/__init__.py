"""Dataset classes: built-in prepared datasets (``prepared``), ``folder:<path>`` image folders
(``folder``), and the external formats ``hdf5:<file>`` and ``clevrtex:<dir>`` (``external``)."""
