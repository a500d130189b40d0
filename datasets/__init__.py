"""bevkd.datasets"""
