"""hashlearn.nn"""
