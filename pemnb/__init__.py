"""pemnb: composing parameter-efficient modules with arithmetic operations.

Helper package for the book that reproduces Zhang, Chen, Liu & He (NeurIPS 2023),
"Composing Parameter-Efficient Modules with Arithmetic Operations" (arXiv:2306.14870).
Import the submodules you need; nothing heavy happens on import.
"""

__version__ = "0.1.0"
