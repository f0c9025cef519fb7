"""flareseg.losses"""
