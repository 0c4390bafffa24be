"""What the tests share: real programs, ports, certificates, servers and scenarios.

Plain modules, imported as ``helpers.<module>``; the fixtures live in
tests/conftest.py.
"""
