"""hashlearn.data"""
