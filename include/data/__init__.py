"""Market-data sources and the market store."""
