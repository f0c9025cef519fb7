"""flareseg.cleaning"""
