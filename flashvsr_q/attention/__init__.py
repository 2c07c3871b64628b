"""flashvsr_q.attention"""
