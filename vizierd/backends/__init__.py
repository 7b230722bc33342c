"""The model backends ``vizier ask`` calls."""
