"""What the tests share: waiting, servers, databases, histories, stack teardown and seeds.

Test modules and conftest files import helpers from here, never from one another.
"""
