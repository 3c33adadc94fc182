"""Explaining grants: the diagnosis of a grant's latest failure (`doctor`) from its attempt history."""

from grantkeeper.diagnosis.doctor import CAUSES, Diagnosis, diagnose

__all__ = ["CAUSES", "Diagnosis", "diagnose"]
