"""The control plane of one cloud: state, the cbr.v1 API, policies, dispatch to agents.

It never streams backup data itself and never imports ``agent``.
"""
