"""flashvsr_q.model"""
