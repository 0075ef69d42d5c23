"""ecephys-dl: get the Allen Visual Coding - Neuropixels dataset onto a lab's disks, and keep it sound.

Data flows one way through the package::

    cli ──> select / resolve ──> plan ──> transfer ──> verify ──> record
    (click)   (rma: queries,                                      (layout: the AllenSDK
              envelopes, records)                                  cache tree, manifest.json)

Only :mod:`ecephys_dl.cli` imports click and prints; the core modules return values and raise
:class:`ecephys_dl.errors.EcephysDlError` subclasses that carry an exit code.

:mod:`ecephys_dl.replica` is a local stand-in for the Allen warehouse and its S3 mirror, used by
the tests, the demo and the benchmarks.
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
