"""Test-wide settings.

Hypothesis: no per-example deadline. CI machines run slower and at uneven speed than a
workstation, and a property test that fails on time says nothing about the property; speed is
measured by `bench/`, never by tests. `print_blob` puts the reproduce decorator into a failure's
output, so a failure seen once in CI can be replayed locally.
"""

from hypothesis import settings

settings.register_profile("trainguard", deadline=None, print_blob=True)
settings.load_profile("trainguard")
