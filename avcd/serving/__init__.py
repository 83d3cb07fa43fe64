"""The student outside training: SavedModel export and scoring raw videos."""
