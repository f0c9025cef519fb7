"""flareseg.sampling"""
