"""flareseg.nnunet"""
