"""The names of a source's patient-level split parts (no heavy imports: command-line parsers read them)."""

SPLITS = ("train", "val", "test")
HELDOUT = "heldout"
"""Every patient outside the train split (val and test together): what samples are evaluated against."""
SPLIT_CHOICES = (*SPLITS, HELDOUT, "all")
