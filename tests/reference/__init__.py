"""Independent reference implementations that tests compare bevkd against.

Nothing here imports bevkd: each module restates an upstream codebase from its source, citing
file and line, so that agreement with bevkd is evidence rather than a tautology.
"""
