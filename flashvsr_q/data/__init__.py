"""flashvsr_q.data"""
