"""Operator tools: health and metrics endpoints, verify, rebuild, the API description."""
