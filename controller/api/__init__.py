"""The gRPC face of the controller: thin servicers, interceptors, conversions.

A servicer turns a request into domain arguments, calls one service function
in one transaction, and turns the result into a response. Authentication,
authorization and error mapping live in the interceptors, once.
"""
