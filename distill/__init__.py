"""bevkd.distill"""
