"""absl-flag launchers, one per stage of LESER, plus `pipeline` that runs them all."""
