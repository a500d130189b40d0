"""bevkd.models"""
