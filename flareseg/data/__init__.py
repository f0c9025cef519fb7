"""flareseg.data"""
