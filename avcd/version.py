"""The package version, recorded in checkpoints and exports."""

VERSION = "0.1.0"
