"""The trainguard API: pydantic models that are the single source of truth.

`crdgen` writes the CustomResourceDefinition and the sample JSON schema from these models.
"""
