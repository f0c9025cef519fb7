"""flareseg.inference"""
