"""bevkd.storage"""
