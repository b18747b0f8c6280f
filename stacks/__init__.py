"""CDK infrastructure for totesys-etl: constructs only, no runtime logic (that is `pipeline/`)."""
