"""flashvsr_q.eval"""
