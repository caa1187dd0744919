"""The science: what each normalization variant is (BatchNorm, AffineLayer, BatchNorm-minus,
none and the extra ones), the ResNets, the initializations and the controls that separate
initialization from normalization.

Imports: errors, data (an init that looks at a batch) — never training, sweeps or analysis.
"""
