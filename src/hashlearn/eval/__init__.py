"""hashlearn.eval"""
