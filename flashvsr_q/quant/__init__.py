"""flashvsr_q.quant"""
