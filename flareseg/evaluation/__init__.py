"""flareseg.evaluation"""
