"""hashlearn.serve"""
