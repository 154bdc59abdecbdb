"""hashlearn.index"""
