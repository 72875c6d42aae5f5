"""Helper library for the VLM fine-tuning notebook series.

Import submodules explicitly (``from vlm_helpers import metrics``); importing the
package itself loads nothing heavy and has no side effects.
"""

__version__ = "0.1.0"
