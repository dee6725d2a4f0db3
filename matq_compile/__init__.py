"""matq_compile: one sliceable int8 checkpoint served at any precision on any target."""
__version__ = "0.1.0"
