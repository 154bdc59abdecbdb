"""hashlearn.train"""
