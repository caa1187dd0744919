"""The datasets: readers for the real file formats (CIFAR-10 pickles, Fashion-MNIST idx), the
validation split, and the loader that keeps a dataset on the device and augments there.

Imports: errors and each other; torch.
"""
